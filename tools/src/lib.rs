//! What the project's tools (`train`, `check`, `dist_check`, `learner`, `bench`, `scale`) share
//! besides the backend choice of `dp-backend`: how they name a split, seeded batches and the
//! comparisons they make against single-device Burn.

pub mod batches;
pub mod compare;
pub mod split;
