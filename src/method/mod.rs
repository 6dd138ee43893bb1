//! What a method is: its kind (answered locally, a write, a read), the block a call needs, and
//! the policy that says which methods a chain serves.

pub mod block;
pub mod cost;
pub mod kind;
pub mod policy;
