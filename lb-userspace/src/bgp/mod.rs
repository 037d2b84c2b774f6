//! BGP speaker (stub).
