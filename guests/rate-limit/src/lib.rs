//! placeholder
wit_bindgen::generate!({ world: "policy", path: "../../wit" });
use edge::policy::types::{Allow, Decision, Request};
struct P;
impl exports::edge::policy::decide::Guest for P {
    fn decide(_req: Request) -> Decision {
        Decision::Allow(Allow { response_headers: Vec::new(), context: Vec::new(), propagate_query: Vec::new() })
    }
}
export!(P);
