//! The projection's work as a plain program does it, for the raw baselines: each payload
//! parsed into a struct, the per-product figures folded in memory, and the changed products
//! handed out when the program writes. No revisions, no stream versions, no dead letters.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// What the raw programs read of a payload (a price change or a comment).
#[derive(Deserialize)]
struct Payload {
    product_id: String,
    price_cents: Option<i64>,
    rating: Option<i64>,
}

/// The figures of one product, as `ProductStats` keeps them.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Figures {
    pub price_cents: i64,
    pub changes: i64,
    pub rating_sum: i64,
    pub ratings: i64,
}

/// The figures of every product, and which changed since they were last taken.
#[derive(Debug, Default)]
pub struct RawFold {
    state: HashMap<String, Figures>,
    changed: HashSet<String>,
}

impl RawFold {
    /// Folds one payload in.
    pub fn apply(&mut self, payload: &[u8]) {
        let p: Payload = serde_json::from_slice(payload).unwrap_or_else(|e| panic!("{e}"));
        let figures = self.state.entry(p.product_id.clone()).or_default();
        if let Some(price) = p.price_cents {
            (figures.price_cents, figures.changes) = (price, figures.changes + 1);
        }
        if let Some(rating) = p.rating {
            (figures.rating_sum, figures.ratings) =
                (figures.rating_sum + rating, figures.ratings + 1);
        }
        self.changed.insert(p.product_id);
    }

    /// The products changed since the last call, with their figures.
    pub fn take_changed(&mut self) -> Vec<(String, Figures)> {
        let changed = std::mem::take(&mut self.changed);
        changed
            .into_iter()
            .map(|id| {
                let figures = self.state.get(&id).copied().unwrap_or_default();
                (id, figures)
            })
            .collect()
    }
}
