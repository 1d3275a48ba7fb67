//! The app's read models: typed queries over a projection's views, found by its name or type.

use super::App;
use crate::error::{Error, Result};
use crate::projection::{Projection, ReadModel};

impl App {
    /// Typed queries over the views of projection `P`: the one named `P::NAME`, else the one
    /// projection of type `P` the app runs under another name (`.named(..)`).
    ///
    /// # Errors
    /// [`Error::Config`] when the app runs no projection of type `P`, or several under other
    /// names (then [`read_model_named`](Self::read_model_named) says which).
    pub fn read_model<P: Projection>(&self) -> Result<ReadModel<P>> {
        let of_type = |p: &&super::Running| p.projection == std::any::TypeId::of::<P>();
        // Under its own name only if it is of type `P`: an older version renamed beside a
        // newer one of the same `NAME` must not be read as the other.
        if self
            .processors
            .iter()
            .filter(of_type)
            .any(|p| p.name == P::NAME)
        {
            return Ok(ReadModel::new(self.wiring.views.query.clone()));
        }
        let of_p: Vec<&str> = self
            .processors
            .iter()
            .filter(of_type)
            .map(|p| p.name.as_str())
            .collect();
        match of_p.as_slice() {
            [name] => Ok(ReadModel::named(self.wiring.views.query.clone(), *name)),
            [] => Err(Error::Config(format!(
                "the app runs no projection of type `{}` (named `{}` or otherwise)",
                std::any::type_name::<P>(),
                P::NAME
            ))),
            names => Err(Error::Config(format!(
                "the app runs projection `{}` under several names ({}): say which with \
                 `read_model_named`",
                P::NAME,
                names.join(", ")
            ))),
        }
    }

    /// Typed queries over the views of projection `P` run under `name`.
    ///
    /// # Errors
    /// [`Error::Config`] when the app runs no projection of type `P` named `name`.
    pub fn read_model_named<P: Projection>(&self, name: &str) -> Result<ReadModel<P>> {
        if !self
            .processors
            .iter()
            .any(|p| p.name == name && p.projection == std::any::TypeId::of::<P>())
        {
            return Err(Error::Config(format!(
                "the app runs no projection of type `{}` named `{name}`",
                std::any::type_name::<P>()
            )));
        }
        Ok(ReadModel::named(self.wiring.views.query.clone(), name))
    }
}
