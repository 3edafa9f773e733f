//! The responses the server builds: warp's response type, and JSON bodies with the
//! contract's content type. Every other module builds its answers with these.

use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};

/// warp's response type.
pub type Response = warp::reply::Response;

/// A JSON body with the contract's `Content-Type: application/json; charset=utf-8`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, bytes),
        Err(error) => {
            tracing::error!(%error, "a response body did not serialize");
            bytes_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"detail":"A server error occurred."}"#.to_vec(),
            )
        }
    }
}

/// JSON bytes already serialized, with the contract's content type.
pub fn bytes_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// A response with a status and no body (204, 205).
pub fn empty_response(status: StatusCode) -> Response {
    let mut response = Response::new(warp::hyper::body::Bytes::new().into());
    *response.status_mut() = status;
    response
}
