//! Replays the committed fuzz corpora (to be written with the fuzz crate).
