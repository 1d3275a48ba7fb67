//! Middleware: hooks around every command.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;

use super::CommandMetadata;
use crate::envelope::Envelope;
use crate::error::Error;

/// What a middleware sees of a command: where it goes, its metadata, and the command itself.
#[derive(Clone)]
pub struct CommandContext<'a> {
    /// The command's name: [`Command::command_name`](crate::Command::command_name) for
    /// `send`, the Rust type name for `send_to`.
    pub command_name: &'static str,
    /// The aggregate type it goes to.
    pub aggregate_type: &'static str,
    /// The aggregate instance it targets.
    pub aggregate_id: String,
    /// Its id, correlation id and key/values (a middleware may add some).
    pub metadata: CommandMetadata,
    command: &'a (dyn Any + Send + Sync),
}

impl<'a> CommandContext<'a> {
    pub(super) fn new<C: crate::Command>(command: &'a C, metadata: CommandMetadata) -> Self {
        CommandContext {
            command_name: command.command_name(),
            aggregate_type: <C::Aggregate as crate::Aggregate>::TYPE,
            aggregate_id: command.aggregate_id().to_owned(),
            metadata,
            command,
        }
    }

    pub(super) fn addressed<A: crate::Aggregate>(
        command: &'a A::Command,
        id: &str,
        metadata: CommandMetadata,
    ) -> Self {
        CommandContext {
            command_name: std::any::type_name::<A::Command>(),
            aggregate_type: A::TYPE,
            aggregate_id: id.to_owned(),
            metadata,
            command,
        }
    }

    /// The command, when it is a `C`: a validation middleware checks the commands it knows
    /// and lets the others pass.
    ///
    /// ```
    /// # use cqrs_core::gateway::{CommandContext, Middleware};
    /// # struct Transfer { cents: i64 }
    /// struct NoNegativeTransfers;
    /// #[async_trait::async_trait]
    /// impl Middleware for NoNegativeTransfers {
    ///     async fn before(&self, ctx: &mut CommandContext<'_>) -> Result<(), String> {
    ///         match ctx.command::<Transfer>() {
    ///             Some(t) if t.cents < 0 => Err(format!("a transfer of {} cents", t.cents)),
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    /// ```
    pub fn command<C: Any>(&self) -> Option<&C> {
        self.command.downcast_ref::<C>()
    }
}

impl std::fmt::Debug for CommandContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandContext")
            .field("command_name", &self.command_name)
            .field("aggregate_type", &self.aggregate_type)
            .field("aggregate_id", &self.aggregate_id)
            .field("metadata", &self.metadata)
            .finish_non_exhaustive()
    }
}

/// How a command ended, as a middleware sees it.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Committed these events (none when the aggregate decided nothing happens).
    Committed(&'a [Envelope]),
    /// Refused: by the aggregate, a middleware, or conflicts; the message says which.
    Refused(String),
    /// Failed in the framework or a backend.
    Failed(&'a Error),
}

/// A hook around every command: validation, authorization, auditing, metrics.
#[async_trait]
pub trait Middleware: Send + Sync {
    /// Runs before the aggregate is loaded; an `Err` refuses the command with that message.
    ///
    /// # Errors
    /// The reason to refuse the command.
    async fn before(&self, ctx: &mut CommandContext<'_>) -> std::result::Result<(), String> {
        let _ = ctx;
        Ok(())
    }

    /// Runs after the command ended.
    async fn after(&self, ctx: &CommandContext<'_>, outcome: &Outcome<'_>) {
        let _ = (ctx, outcome);
    }
}

#[async_trait]
impl<T: Middleware + ?Sized> Middleware for Arc<T> {
    async fn before(&self, ctx: &mut CommandContext<'_>) -> std::result::Result<(), String> {
        (**self).before(ctx).await
    }
    async fn after(&self, ctx: &CommandContext<'_>, outcome: &Outcome<'_>) {
        (**self).after(ctx, outcome).await
    }
}

#[async_trait]
impl<T: Middleware + ?Sized> Middleware for Box<T> {
    async fn before(&self, ctx: &mut CommandContext<'_>) -> std::result::Result<(), String> {
        (**self).before(ctx).await
    }
    async fn after(&self, ctx: &CommandContext<'_>, outcome: &Outcome<'_>) {
        (**self).after(ctx, outcome).await
    }
}
