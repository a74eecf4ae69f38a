//! maestro-api
