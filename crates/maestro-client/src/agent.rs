//! The agent SDK (being written).
