//! The gRPC front doors, one tonic service per file: converters only. Each handler turns its
//! proto request into the core's domain types, runs it through [`crate::boundary::boundary`]
//! (and, for inference, [`crate::infer::infer`]), and turns the answer back into proto.
//!
//! What this module adds is the gRPC edge of a call: [`call`] reads the facts the transport
//! decided ([`CallInfo`]) into a [`Call`], and [`serve`] sends the boundary's result as a
//! response or a status, with the request id echoed.

pub mod admin;
pub mod inference;
pub mod kserve;
pub(crate) mod kserve_convert;
pub mod stats;
pub(crate) mod torchwire_convert;

use std::future::Future;
use std::time::Instant;

use tonic::{Request, Response, Status};

pub use crate::boundary::{AppState, SharedState};
use crate::boundary::{Call, Handled, boundary};
use crate::deadline::Deadline;
use crate::error::Result;
use crate::transport::CallInfo;

/// The call's facts: those the transport decided (arrival, deadline, client, request id), the
/// RPC and the model the request names.
pub fn call<T>(state: &AppState, rpc: &'static str, req: &Request<T>, model: String, admitted: bool) -> Call {
    match req.extensions().get::<CallInfo>() {
        Some(info) => Call {
            rpc: if info.http { crate::rest::http_label(rpc) } else { rpc },
            model,
            arrived: info.arrived,
            deadline: info.deadline,
            client: info.client.clone(),
            request_id: info.request_id.clone(),
            admitted,
            no_cache: info.no_cache,
        },
        // Only when a service is driven without the transport (never in the server).
        None => {
            let arrived = Instant::now();
            let c = &state.config;
            Call {
                rpc,
                model,
                arrived,
                deadline: Deadline::for_call(arrived, None, c.default_timeout, c.max_timeout),
                client: "unknown".to_owned(),
                request_id: crate::transport::new_request_id(),
                admitted,
                no_cache: false,
            }
        }
    }
}

/// Runs `handler` inside the boundary and answers with its result, echoing the request id.
pub async fn serve<T>(
    state: &AppState,
    call: Call,
    handler: impl Future<Output = Handled<T>>,
) -> std::result::Result<Response<T>, Status> {
    let result = boundary(state, &call, handler).await;
    reply(&call, result)
}

/// Shorthand for handlers whose work is a plain `Result`.
pub async fn serve_result<T>(
    state: &AppState,
    call: Call,
    handler: impl Future<Output = Result<T>>,
) -> std::result::Result<Response<T>, Status> {
    serve(state, call, async { Handled::from(handler.await) }).await
}

fn reply<T>(call: &Call, result: Result<T>) -> std::result::Result<Response<T>, Status> {
    let mut response = result.map(Response::new).map_err(Status::from);
    if let Ok(id) = call.request_id.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>() {
        match &mut response {
            Ok(r) => {
                r.metadata_mut().insert("x-request-id", id);
            }
            Err(s) => {
                s.metadata_mut().insert("x-request-id", id);
            }
        }
    }
    response
}
