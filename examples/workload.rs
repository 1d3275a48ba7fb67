//! The shop's product workload as a new user writes it: three events, one aggregate with three
//! commands, one view, wired with the builder on the embedded default.
//! `cargo run --example workload`
use std::time::Duration;

use cqrs_core::{Aggregate, App, Envelope, Fold};
use serde::{Deserialize, Serialize};
use ProductCommand::{ChangePrice, Create, Rename};

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Created {
    name: String,
    price_cents: i64,
}
cqrs_core::event!(Created, "workload.Created");
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Renamed(String);
cqrs_core::event!(Renamed, "workload.Renamed");
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Repriced(i64);
cqrs_core::event!(Repriced, "workload.Repriced");
cqrs_core::event_set! {
    #[derive(Debug, Clone, PartialEq)]
    enum ProductEvent { Created(Created), Renamed(Renamed), Repriced(Repriced) }
}

enum ProductCommand {
    Create { name: String, price_cents: i64 },
    Rename(String),
    ChangePrice(i64),
}

#[derive(Debug, thiserror::Error)]
enum ProductError {
    #[error("the product exists already")]
    Exists,
    #[error("no such product")]
    Missing,
    #[error("a price is never negative")]
    NegativePrice,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Product {
    exists: bool,
}

impl Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;
    fn handle(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        let event: ProductEvent = match (command, self.exists) {
            (Create { .. }, true) => return Err(ProductError::Exists),
            (Rename(_) | ChangePrice(_), false) => return Err(ProductError::Missing),
            (Create { price_cents: p, .. } | ChangePrice(p), _) if *p < 0 => {
                return Err(ProductError::NegativePrice)
            }
            (Create { name, price_cents }, _) => {
                let (name, price_cents) = (name.clone(), *price_cents);
                Created { name, price_cents }.into()
            }
            (Rename(name), _) => Renamed(name.clone()).into(),
            (ChangePrice(price), _) => Repriced(*price).into(),
        };
        Ok(vec![event])
    }
    fn apply(&mut self, event: &ProductEvent) {
        self.exists |= matches!(event, ProductEvent::Created(_));
    }
}

/// The read side: a product's name and price, one view per product.
struct Summaries;
impl Fold for Summaries {
    const NAME: &'static str = "product_summaries";
    type Event = ProductEvent;
    type View = Created;
    fn fold(&self, view: &mut Created, event: &ProductEvent, _: &Envelope) {
        match event {
            ProductEvent::Created(e) => *view = e.clone(),
            ProductEvent::Renamed(e) => view.name = e.0.clone(),
            ProductEvent::Repriced(e) => view.price_cents = e.0,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut app = App::builder().projection(Summaries, |p| p).build()?;
    let rename = Rename("Big mug".into());
    for command in [
        Create {
            name: "Mug".into(),
            price_cents: 1200,
        },
        rename,
        ChangePrice(1500),
    ] {
        app.gateway().send_to::<Product>("p-1", command).await?;
    }
    let missing = app
        .gateway()
        .send_to::<Product>("p-2", ChangePrice(1))
        .await;
    println!("repricing a missing product: {:?}", missing.err());
    app.caught_up(Duration::from_secs(5)).await?;
    println!("{:?}", app.read_model::<Summaries>()?.get("p-1").await?);
    Ok(app.shutdown().await?)
}
