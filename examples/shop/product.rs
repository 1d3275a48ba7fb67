//! The product aggregate: create, rename, change price.

use cqrs_core::{Aggregate, Command};
use serde::{Deserialize, Serialize};

use crate::events::{ProductCreated, ProductEvent, ProductPriceChanged, ProductRenamed};

/// The aggregate type of products.
pub const PRODUCT: &str = "product";

/// What the product service can be asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProductCommand {
    /// Put a product on sale.
    Create {
        /// The new product's id.
        product_id: String,
        /// Its name.
        name: String,
        /// Its price in cents.
        price_cents: i64,
    },
    /// Rename a product.
    Rename {
        /// The product.
        product_id: String,
        /// The new name.
        name: String,
    },
    /// Change a product's price.
    ChangePrice {
        /// The product.
        product_id: String,
        /// The new price in cents.
        price_cents: i64,
    },
}

impl Command for ProductCommand {
    type Aggregate = Product;
    fn aggregate_id(&self) -> &str {
        match self {
            ProductCommand::Create { product_id, .. }
            | ProductCommand::Rename { product_id, .. }
            | ProductCommand::ChangePrice { product_id, .. } => product_id,
        }
    }
    fn command_name(&self) -> &'static str {
        match self {
            ProductCommand::Create { .. } => "product.create",
            ProductCommand::Rename { .. } => "product.rename",
            ProductCommand::ChangePrice { .. } => "product.change_price",
        }
    }
}

/// Why the product service refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// Names must have a visible character.
    #[error("a product name must not be empty")]
    EmptyName,
    /// Prices are zero or more.
    #[error("a price must not be negative (got {0} cents)")]
    NegativePrice(i64),
    /// Ids are unique.
    #[error("product `{0}` already exists")]
    AlreadyExists(String),
    /// Only existing products change.
    #[error("product `{0}` does not exist")]
    NotFound(String),
}

/// A product's state, as far as its decisions need it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Whether it was created.
    pub exists: bool,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price_cents: i64,
}

fn check_name(name: &str) -> Result<String, ProductError> {
    let name = name.trim();
    if name.is_empty() {
        Err(ProductError::EmptyName)
    } else {
        Ok(name.to_owned())
    }
}

fn check_price(price_cents: i64) -> Result<i64, ProductError> {
    if price_cents < 0 {
        Err(ProductError::NegativePrice(price_cents))
    } else {
        Ok(price_cents)
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = PRODUCT;
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    fn handle(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::Create {
                product_id,
                name,
                price_cents,
            } => {
                if self.exists {
                    return Err(ProductError::AlreadyExists(product_id.clone()));
                }
                Ok(vec![ProductCreated {
                    product_id: product_id.clone(),
                    name: check_name(name)?,
                    price_cents: check_price(*price_cents)?,
                }
                .into()])
            }
            ProductCommand::Rename { product_id, name } => {
                if !self.exists {
                    return Err(ProductError::NotFound(product_id.clone()));
                }
                let name = check_name(name)?;
                if name == self.name {
                    return Ok(vec![]);
                }
                Ok(vec![ProductRenamed {
                    product_id: product_id.clone(),
                    name,
                }
                .into()])
            }
            ProductCommand::ChangePrice {
                product_id,
                price_cents,
            } => {
                if !self.exists {
                    return Err(ProductError::NotFound(product_id.clone()));
                }
                let price_cents = check_price(*price_cents)?;
                if price_cents == self.price_cents {
                    return Ok(vec![]);
                }
                Ok(vec![ProductPriceChanged {
                    product_id: product_id.clone(),
                    price_cents,
                }
                .into()])
            }
        }
    }

    fn apply(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::Created(e) => {
                self.exists = true;
                self.name.clone_from(&e.name);
                self.price_cents = e.price_cents;
            }
            ProductEvent::Renamed(e) => self.name.clone_from(&e.name),
            ProductEvent::PriceChanged(e) => self.price_cents = e.price_cents,
        }
    }
}
