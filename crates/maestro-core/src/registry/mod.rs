//! The Agent Registry.
