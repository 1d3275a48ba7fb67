//! The shop: a product service and a comment service write events; a catalog read model joins
//! them (name, price, average rating, comments). The domain here is pure; `main.rs` wires it.

pub mod catalog;
pub mod comment;
pub mod events;
pub mod product;

/// The project README's example, compiled as a doctest.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
