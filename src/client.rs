//! Client commands of the `torchwire` binary (`models`, `predict`): thin wrappers over the
//! generated tonic clients that print human-readable answers.

use std::collections::HashMap;

use anyhow::{Context, bail};

use crate::cli::{ClientArgs, PredictArgs};
use crate::proto::admin_client::AdminClient;
use crate::proto::inference_client::InferenceClient;
use crate::proto::{self, ListModelsRequest, PredictRequest};

/// `torchwire models`: one line per model and device.
pub async fn models(args: ClientArgs) -> anyhow::Result<()> {
    let mut client =
        AdminClient::connect(args.addr.clone()).await.with_context(|| format!("connecting to {}", args.addr))?;
    let mut req = tonic::Request::new(ListModelsRequest {});
    if let Some(auth) = args.authorization()? {
        req.metadata_mut().insert("authorization", auth);
    }
    let list = client.list_models(req).await?.into_inner();
    for m in list.models {
        let states: Vec<String> = m
            .devices
            .iter()
            .map(|d| {
                format!(
                    "{}={}",
                    d.device,
                    proto::ModelState::try_from(d.state).map_or("?", |s| s.as_str_name()).to_lowercase()
                )
            })
            .collect();
        println!("{:<24} {:<20} {}  {}", m.name, m.kind, states.join(" "), m.description);
    }
    Ok(())
}

/// Parses `name=value,name=value`.
pub fn parse_row(s: &str) -> anyhow::Result<proto::Row> {
    let mut features = HashMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let Some((k, v)) = part.split_once('=') else { bail!("expected name=value, got {part:?}") };
        let v: f64 = v.trim().parse().with_context(|| format!("{k}: not a number: {v:?}"))?;
        features.insert(k.trim().to_owned(), v);
    }
    Ok(proto::Row { features })
}

/// `torchwire predict`: prints each row's label and probabilities.
pub async fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let rows = args.rows.iter().map(|r| parse_row(r)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut client = InferenceClient::connect(args.client.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.client.addr))?;
    let mut req = tonic::Request::new(PredictRequest {
        model: args.model,
        device: args.device,
        rows,
        inputs: vec![],
        version: String::new(),
    });
    if let Some(auth) = args.client.authorization()? {
        req.metadata_mut().insert("authorization", auth);
    }
    let resp = client.predict(req).await?.into_inner();
    for (i, p) in resp.predictions.iter().enumerate() {
        let mut probs: Vec<_> = p.probabilities.iter().collect();
        probs.sort_by(|a, b| a.0.cmp(b.0));
        let probs: Vec<String> = probs.iter().map(|(k, v)| format!("{k}={v:.4}")).collect();
        println!("row {i}: {} ({:.4})  {}", p.label, p.score, probs.join(" "));
    }
    if let Some(t) = resp.timing {
        println!(
            "device {} batch {} queue {} us compute {} us total {} us",
            resp.device, t.batch_size, t.queue_us, t.compute_us, t.total_us
        );
    }
    Ok(())
}
