//! Adapters: the implementations of the actor crate's ports, one file per backend.

pub mod analytics;
pub mod bus;
pub mod mail;
pub mod registry;
pub mod store;
