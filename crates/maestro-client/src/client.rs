//! The typed API client (being written).
