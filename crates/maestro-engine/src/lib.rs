//! maestro-engine
