//! The HTTP door's routing table: which method and path is which endpoint, the gRPC method
//! each one stands for (so API keys, metric labels and logs treat both doors alike), and the
//! answer to a path no endpoint serves (404 naming the API roots) or a wrong method (405).

use http::Method;

use crate::error::{Error, clip};

/// One HTTP endpoint, with the model and version its path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /`: the status page.
    Ui,
    /// `GET /v2/health/live`.
    Live,
    /// `GET /v2/health/ready`.
    Ready,
    /// `GET /v2`.
    ServerMetadata,
    /// `GET /v2/models/{m}[/versions/{v}]`.
    ModelMetadata(Target),
    /// `GET /v2/models/{m}[/versions/{v}]/ready`.
    ModelReady(Target),
    /// `GET /v2/models/{m}[/versions/{v}]/config`.
    ModelConfig(Target),
    /// `GET /v2/models/stats` (every model) or `/v2/models/{m}[/versions/{v}]/stats`.
    ModelStatistics(Target),
    /// `POST /v2/models/{m}[/versions/{v}]/infer`.
    ModelInfer(Target),
    /// `POST /v2/repository/index`.
    RepositoryIndex,
    /// `POST /v2/repository/models/{m}/load`.
    RepositoryLoad(String),
    /// `POST /v2/repository/models/{m}/unload`.
    RepositoryUnload(String),
    /// `POST /v1/models/{m}:predict`.
    Predict(String),
    /// `POST /v1/sentiment`.
    Sentiment,
    /// `GET /v1/stats`.
    Stats,
    /// `POST /v1/stats:reset`.
    ResetStats,
    /// `GET /v1/models`.
    ListModels,
    /// `GET /v1/models/{m}`.
    GetModel(String),
    /// `POST /v1/models/{m}:load`.
    LoadModel(String),
    /// `POST /v1/models/{m}:unload`.
    UnloadModel(String),
}

/// A model and version named by a KServe path; empty = every model / the default version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// Model name as given.
    pub model: String,
    /// Version as given; empty when the path names none.
    pub version: String,
}

impl Route {
    /// The endpoint at `method` and `path`, or why none answers.
    pub fn parse(method: &Method, path: &str) -> Result<Route, Error> {
        let trimmed = if path.len() > 1 { path.strip_suffix('/').unwrap_or(path) } else { path };
        let route = match_path(trimmed).ok_or_else(|| Error::NoSuchPath { path: clip(path, 96) })?;
        let allowed = route.method();
        if *method == allowed || (*method == Method::HEAD && allowed == Method::GET) {
            Ok(route)
        } else {
            Err(Error::MethodNotAllowed {
                method: clip(method.as_str(), 16),
                path: clip(path, 96),
                allowed: if allowed == Method::GET { "GET, HEAD" } else { "POST" },
            })
        }
    }

    /// The one method this endpoint takes.
    pub fn method(&self) -> Method {
        match self {
            Route::ModelInfer(_)
            | Route::RepositoryIndex
            | Route::RepositoryLoad(_)
            | Route::RepositoryUnload(_)
            | Route::Predict(_)
            | Route::Sentiment
            | Route::ResetStats
            | Route::LoadModel(_)
            | Route::UnloadModel(_) => Method::POST,
            _ => Method::GET,
        }
    }

    /// The gRPC method this endpoint stands for: API keys classify it (`auth::classify`).
    pub fn grpc_path(&self) -> &'static str {
        match self {
            // The page itself holds no data; what it shows comes through the API.
            Route::Ui | Route::Live => "/inference.GRPCInferenceService/ServerLive",
            Route::Ready => "/inference.GRPCInferenceService/ServerReady",
            Route::ServerMetadata => "/inference.GRPCInferenceService/ServerMetadata",
            Route::ModelMetadata(_) => "/inference.GRPCInferenceService/ModelMetadata",
            Route::ModelReady(_) => "/inference.GRPCInferenceService/ModelReady",
            Route::ModelConfig(_) => "/inference.GRPCInferenceService/ModelConfig",
            Route::ModelStatistics(_) => "/inference.GRPCInferenceService/ModelStatistics",
            Route::ModelInfer(_) => "/inference.GRPCInferenceService/ModelInfer",
            Route::RepositoryIndex => "/inference.GRPCInferenceService/RepositoryIndex",
            Route::RepositoryLoad(_) => "/inference.GRPCInferenceService/RepositoryModelLoad",
            Route::RepositoryUnload(_) => "/inference.GRPCInferenceService/RepositoryModelUnload",
            Route::Predict(_) => "/torchwire.v1.Inference/Predict",
            Route::Sentiment => "/torchwire.v1.Inference/Sentiment",
            Route::Stats => "/torchwire.v1.Inference/Stats",
            Route::ResetStats => "/torchwire.v1.Admin/ResetStats",
            Route::ListModels => "/torchwire.v1.Admin/ListModels",
            Route::GetModel(_) => "/torchwire.v1.Admin/GetModel",
            Route::LoadModel(_) => "/torchwire.v1.Admin/LoadModel",
            Route::UnloadModel(_) => "/torchwire.v1.Admin/UnloadModel",
        }
    }

    /// The gRPC method whose key rule this endpoint follows: its own, except that reading the
    /// model list and a model's details (`GET /v1/models[/{m}]`, Admin.ListModels / GetModel
    /// on gRPC) is open to inference keys, as the KServe metadata is, so the status page works
    /// with an API key when admin keys are configured too.
    pub fn access_path(&self) -> &'static str {
        match self {
            Route::ListModels | Route::GetModel(_) => "/inference.GRPCInferenceService/ModelMetadata",
            other => other.grpc_path(),
        }
    }

    /// The `rpc` label of this endpoint's calls in metrics, Stats and logs: `http/<Method>`.
    pub fn rpc(&self) -> &'static str {
        match self {
            Route::Ui => "http/StatusPage",
            other => http_label(crate::boundary::rpc_label(other.grpc_path())),
        }
    }
}

/// The `rpc` label of a call that came in by HTTP, for the gRPC method name `rpc`.
pub fn http_label(rpc: &'static str) -> &'static str {
    match rpc {
        "Predict" => "http/Predict",
        "Sentiment" => "http/Sentiment",
        "Stats" => "http/Stats",
        "ListModels" => "http/ListModels",
        "GetModel" => "http/GetModel",
        "LoadModel" => "http/LoadModel",
        "UnloadModel" => "http/UnloadModel",
        "ResetStats" => "http/ResetStats",
        "ServerLive" => "http/ServerLive",
        "ServerReady" => "http/ServerReady",
        "ModelReady" => "http/ModelReady",
        "ServerMetadata" => "http/ServerMetadata",
        "ModelMetadata" => "http/ModelMetadata",
        "ModelInfer" => "http/ModelInfer",
        "ModelConfig" => "http/ModelConfig",
        "ModelStatistics" => "http/ModelStatistics",
        "RepositoryIndex" => "http/RepositoryIndex",
        "RepositoryModelLoad" => "http/RepositoryModelLoad",
        "RepositoryModelUnload" => "http/RepositoryModelUnload",
        _ => "http/unknown",
    }
}

fn match_path(path: &str) -> Option<Route> {
    if path == "/" {
        return Some(Route::Ui);
    }
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        ["v2"] => Some(Route::ServerMetadata),
        ["v2", "health", "live"] => Some(Route::Live),
        ["v2", "health", "ready"] => Some(Route::Ready),
        ["v2", "models", "stats"] => Some(Route::ModelStatistics(Target::default())),
        ["v2", "models", model, rest @ ..] if !model.is_empty() => kserve_model(model, rest),
        ["v2", "repository", "index"] => Some(Route::RepositoryIndex),
        ["v2", "repository", "models", model, "load"] => Some(Route::RepositoryLoad((*model).to_owned())),
        ["v2", "repository", "models", model, "unload"] => Some(Route::RepositoryUnload((*model).to_owned())),
        ["v1", "models"] => Some(Route::ListModels),
        ["v1", "models", named] => v1_model(named),
        ["v1", "sentiment"] => Some(Route::Sentiment),
        ["v1", "stats"] => Some(Route::Stats),
        ["v1", "stats:reset"] => Some(Route::ResetStats),
        _ => None,
    }
}

fn kserve_model(model: &str, rest: &[&str]) -> Option<Route> {
    let (version, action) = match rest {
        ["versions", v, action @ ..] if !v.is_empty() => ((*v).to_owned(), action),
        action => (String::new(), action),
    };
    let target = Target { model: model.to_owned(), version };
    match action {
        [] => Some(Route::ModelMetadata(target)),
        ["ready"] => Some(Route::ModelReady(target)),
        ["config"] => Some(Route::ModelConfig(target)),
        ["stats"] => Some(Route::ModelStatistics(target)),
        ["infer"] => Some(Route::ModelInfer(target)),
        _ => None,
    }
}

fn v1_model(named: &str) -> Option<Route> {
    match named.rsplit_once(':') {
        None if !named.is_empty() => Some(Route::GetModel(named.to_owned())),
        Some((model, "predict")) if !model.is_empty() => Some(Route::Predict(model.to_owned())),
        Some((model, "load")) if !model.is_empty() => Some(Route::LoadModel(model.to_owned())),
        Some((model, "unload")) if !model.is_empty() => Some(Route::UnloadModel(model.to_owned())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_their_endpoints() {
        let get = |p: &str| Route::parse(&Method::GET, p);
        let post = |p: &str| Route::parse(&Method::POST, p);
        let t = |m: &str, v: &str| Target { model: m.into(), version: v.into() };
        assert_eq!(get("/").ok(), Some(Route::Ui));
        assert_eq!(get("/v2/health/live").ok(), Some(Route::Live));
        assert_eq!(get("/v2/").ok(), Some(Route::ServerMetadata));
        assert_eq!(get("/v2/models/m").ok(), Some(Route::ModelMetadata(t("m", ""))));
        assert_eq!(get("/v2/models/m/versions/2/ready").ok(), Some(Route::ModelReady(t("m", "2"))));
        assert_eq!(get("/v2/models/stats").ok(), Some(Route::ModelStatistics(Target::default())));
        assert_eq!(post("/v2/models/m/versions/2/infer").ok(), Some(Route::ModelInfer(t("m", "2"))));
        assert_eq!(post("/v2/repository/models/m/unload").ok(), Some(Route::RepositoryUnload("m".into())));
        assert_eq!(post("/v1/models/m@canary:predict").ok(), Some(Route::Predict("m@canary".into())));
        assert_eq!(get("/v1/models/m").ok(), Some(Route::GetModel("m".into())));
        assert_eq!(post("/v1/stats:reset").ok(), Some(Route::ResetStats));
        assert_eq!(Route::parse(&Method::HEAD, "/v1/stats").ok(), Some(Route::Stats));
    }

    #[test]
    fn unknown_paths_and_wrong_methods_are_refused_with_what_would_work() {
        for p in [
            "/v3",
            "/v2/models/m/explain",
            "/v1/models/:predict",
            "/v2/models//ready",
            "/favicon.ico",
            "/v1/models/m:explode",
        ] {
            let e = Route::parse(&Method::GET, p).unwrap_err();
            assert!(matches!(e, Error::NoSuchPath { .. }), "{p}: {e}");
            assert!(e.to_string().contains("/v2 (KServe v2 REST)"), "{e}");
        }
        let e = Route::parse(&Method::GET, "/v2/models/m/infer").unwrap_err();
        assert!(matches!(e, Error::MethodNotAllowed { allowed: "POST", .. }), "{e}");
        let e = Route::parse(&Method::DELETE, "/v1/stats").unwrap_err();
        assert_eq!(e.to_string(), "DELETE is not allowed on /v1/stats; use GET, HEAD");
    }

    #[test]
    fn endpoints_carry_the_grpc_methods_they_stand_for() {
        use crate::auth::{Access, classify};
        assert_eq!(classify(Route::Ui.grpc_path()), Access::Open);
        assert_eq!(classify(Route::Live.grpc_path()), Access::Open);
        assert_eq!(classify(Route::Predict("m".into()).grpc_path()), Access::Inference);
        assert_eq!(classify(Route::ResetStats.grpc_path()), Access::Admin);
        assert_eq!(classify(Route::RepositoryLoad("m".into()).grpc_path()), Access::Admin);
        assert_eq!(classify(Route::ListModels.access_path()), Access::Inference);
        assert_eq!(classify(Route::GetModel("m".into()).access_path()), Access::Inference);
        assert_eq!(classify(Route::LoadModel("m".into()).access_path()), Access::Admin);
        assert_eq!(Route::ModelInfer(Target::default()).rpc(), "http/ModelInfer");
        assert_eq!(Route::Stats.rpc(), "http/Stats");
    }
}
