//! Authentication: signed tokens ([`jwt`]) and password hashing ([`password`]).

pub mod jwt;
pub mod password;
