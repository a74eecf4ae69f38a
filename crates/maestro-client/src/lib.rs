//! maestro-client
