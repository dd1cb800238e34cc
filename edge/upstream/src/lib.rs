//! Edge-side seeder routing: directory lookup, ketama choice among healthy seeders, hedging, fallback to the origin.
