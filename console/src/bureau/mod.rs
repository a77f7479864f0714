//! The bureau's pages: the approval queue ([`queue`]), the catalog with grants and their
//! budgets ([`catalog`]), money ([`money`]), the audit log ([`audit`]), principals
//! ([`principals`]), correction requests ([`corrections`]) and the emergency stop with its
//! incident log ([`incidents`]).

pub mod audit;
pub mod catalog;
pub mod corrections;
pub mod incidents;
pub mod money;
pub mod principals;
pub mod queue;

use std::sync::Arc;

use axum::Router;

use crate::Console;

pub(crate) fn routes() -> Router<Arc<Console>> {
    Router::new()
        .merge(queue::routes())
        .merge(catalog::routes())
        .merge(money::routes())
        .merge(audit::routes())
        .merge(principals::routes())
        .merge(incidents::routes())
        .merge(corrections::routes())
}
