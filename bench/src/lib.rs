//! Benchmarks for the edge: see benches/ and load/.
