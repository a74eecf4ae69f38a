//! maestro-store
