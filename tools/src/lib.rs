//! What the project's tools (`train`, `check`, `dist_check`, `learner`, `bench`, `scale`) share
//! besides the backend choice of `dp-backend` and the zoo of `dp-zoo` (models, seeded data,
//! references, comparisons): how they name a split.

pub mod split;
