//! The seeder role: serves a segment directory to edges, publishes it to the Redis directory, expires old files.
