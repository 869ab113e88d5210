//! `GET /openapi.json`: the API described, generated from the handlers' annotations.

use crate::AppState;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "Latch", description = "Self-service cabinets and parcel lockers"),
    paths(
        crate::health::healthz,
        crate::health::readyz,
        crate::metrics::scrape,
        crate::nats_identities::rotate_handler,
        crate::nats_identities::revoke,
        crate::devices::register,
        crate::devices::list,
        crate::devices::show,
        crate::devices::open,
        crate::qr::loginpic,
        crate::qr::loginpic_seed_form,
        crate::qr::code,
        crate::qr::token,
        crate::qr::poll,
        crate::qr::push,
        crate::qr::lock,
        crate::qr::activate,
        crate::qr::cancel,
        crate::qr::redeem,
        crate::qr::me,
        crate::vending::publish_planogram,
        crate::vending::show_planogram,
        crate::vending::sticker_link,
        crate::vending::list_orders,
        crate::vending::show_order,
        crate::vending::resolve_review,
        crate::vending::refund,
        crate::vending::shop::me,
        crate::vending::shop::cabinet,
        crate::vending::shop::open,
        crate::vending::shop::my_orders,
        crate::vending::shop::my_order,
        crate::vending::push::order_events,
        crate::vending::shop::pay,
        crate::vending::shop::sync,
        crate::vending::shop::webhook,
        crate::lockers::sites::register_site,
        crate::lockers::sites::list_sites,
        crate::lockers::sites::install_compartment,
        crate::lockers::sites::wire_door,
        crate::lockers::sites::show_compartment,
        crate::lockers::users::register_user,
        crate::lockers::users::disable_user,
        crate::lockers::users::enable_user,
        crate::lockers::authorizers::deactivate_authorizer,
        crate::lockers::authorizers::activate_authorizer,
        crate::lockers::sites::holder_at,
        crate::lockers::parcels::deposit,
        crate::lockers::parcels::collect,
        crate::lockers::sms::sandbox_sms,
        crate::lockers::authorizers::register_authorizer,
        crate::lockers::authorizers::list_authorizers,
        crate::lockers::users::login,
        crate::lockers::reservations::reserve,
        crate::lockers::reservations::my_compartments,
        crate::lockers::reservations::my_inbox,
        crate::lockers::grants::grant_direct,
        crate::lockers::grants::grant_via_authorizer,
        crate::lockers::grants::show_grant,
        crate::lockers::grants::open_grants,
        crate::lockers::callback::authorizer_callback,
        crate::locker_pages::page_login,
        crate::locker_pages::page_logout,
        crate::tokens::logout,
        crate::locker_pages::whoami,
        crate::ops_pages::login,
        crate::ops_pages::logout,
        crate::ops_pages::whoami,
        crate::ops_pages::live::live,
        crate::dead_letters::list,
        crate::audit::events,
        crate::audit::aggregate,
        crate::audit::as_of_handler,
        crate::audit::verify_handler,
        crate::audit::checkpoints,
        crate::audit::check_checkpoint,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
