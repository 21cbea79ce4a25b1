//! A version's self-test: after the load and warm-up, on the worker thread, the manifest's
//! golden inputs run through the same checks and forward pass as requests, and their first
//! output must reproduce the recorded one within the tolerance. A version that fails never
//! becomes READY, so it never takes a request (and a swap to it keeps the old version).

use std::collections::HashMap;

use crate::batch::Payload;
use crate::error::Cause;
use crate::model::{HostTensor, ModelSpec, SelfTest};
use crate::request::{Inputs, TextsInput};
use crate::validate::{Limits, payload};

/// Limits wide enough for any golden the manifest parser accepted.
const LIMITS: Limits =
    Limits { max_tensor_elements: usize::MAX, max_rows: usize::MAX, max_texts: usize::MAX, max_text_bytes: usize::MAX };

/// The tolerance floor where a model runs in fp16 (a GPU with `fp16 = true`): goldens are
/// recorded in fp32, and half precision keeps about three significant digits.
pub const FP16_TOLERANCE: f64 = 1e-2;

/// Runs every self-test of `spec` with `run` (the worker's tokenise-and-forward), one row or
/// text at a time (a golden is recorded for its input alone: batch-mates and padding can move
/// an answer, by up to 0.7 for an int8 model); `Ok` when all reproduce, else the first
/// mismatch, named. `half`: the model runs in fp16.
pub fn check(
    spec: &ModelSpec,
    half: bool,
    mut run: impl FnMut(Payload) -> Result<Vec<HostTensor>, Cause>,
) -> Result<(), Cause> {
    let mut checks = 0;
    for (i, test) in spec.self_test.iter().enumerate() {
        let tolerance = if half { test.tolerance.max(FP16_TOLERANCE) } else { test.tolerance };
        for (j, (input, want)) in inputs(spec, test).into_iter().zip(&test.expected).enumerate() {
            let at = format!("self_test[{i}] input {j}");
            let (p, _) = payload(spec, input, usize::MAX, LIMITS)
                .map_err(|e| Cause::SelfTest(format!("{at}: the golden input is refused: {e}")))?;
            let outputs = run(p)?;
            let first = outputs.first().ok_or_else(|| Cause::SelfTest(format!("{at}: the model returned nothing")))?;
            compare(&at, want, tolerance, &first.to_f32())?;
            checks += 1;
        }
    }
    if checks > 0 {
        tracing::info!(model = %spec.name, version = spec.version, checks, "self-test passed");
    }
    Ok(())
}

/// Each row or text of a self-test as a one-item request.
fn inputs(spec: &ModelSpec, test: &SelfTest) -> Vec<Inputs> {
    if !test.texts.is_empty() {
        return test
            .texts
            .iter()
            .map(|t| Inputs::Texts(TextsInput { texts: vec![t.as_bytes().to_vec()], max_length: None }))
            .collect();
    }
    let features = spec.inputs.first().map(|i| i.features.as_slice()).unwrap_or_default();
    test.rows
        .iter()
        .map(|row| {
            let named: HashMap<String, f64> = features.iter().zip(row).map(|(f, v)| (f.name.clone(), *v)).collect();
            Inputs::Rows(vec![named])
        })
        .collect()
}

fn compare(at: &str, want: &[f64], tolerance: f64, got: &[f32]) -> Result<(), Cause> {
    if got.len() != want.len() {
        return Err(Cause::SelfTest(format!(
            "{at}: the first output has {} values, the golden {}",
            got.len(),
            want.len()
        )));
    }
    let worst =
        got.iter().zip(want).map(|(g, w)| (f64::from(*g) - w).abs()).enumerate().fold((0, 0.0_f64), |acc, (j, d)| {
            if d.is_nan() || d > acc.1 { (j, if d.is_nan() { f64::INFINITY } else { d }) } else { acc }
        });
    if worst.1 > tolerance {
        return Err(Cause::SelfTest(format!(
            "{at}: output {} is {} where the golden is {} (off by {:.3e}, tolerance {:.1e})",
            worst.0, got[worst.0], want[worst.0], worst.1, tolerance
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::parse_manifest;
    use std::path::Path;

    fn spec(expected: &str) -> ModelSpec {
        let text = format!(
            "kind = \"tabular\"\n[[inputs]]\nname = \"x\"\ndtype = \"float32\"\nshape = [-1, 2]\nfeatures = [{{ name = \"a\" }}, {{ name = \"b\" }}]\n[[self_test]]\nrows = [[1.0, 2.0]]\nexpected = [{expected}]\ntolerance = 0.01\n"
        );
        parse_manifest("m", Path::new("/nonexistent"), &text).unwrap()
    }

    /// A backend stand-in that answers `a + b` and `a - b` for the row it gets.
    fn sum_and_difference(p: Payload) -> Result<Vec<HostTensor>, Cause> {
        let Payload::Tensors(t) = p else { panic!("rows become tensors") };
        let x = t[0].to_f32();
        Ok(vec![HostTensor::from_f32("y", vec![1, 2], &[x[0] + x[1], x[0] - x[1]])])
    }

    #[test]
    fn goldens_must_reproduce_within_the_tolerance() {
        check(&spec("[3.0, -1.0]"), false, sum_and_difference).unwrap();
        check(&spec("[3.005, -1.0]"), false, sum_and_difference).unwrap();
        let err = check(&spec("[3.0, -1.5]"), false, sum_and_difference).unwrap_err();
        assert!(err.to_string().contains("self_test[0] input 0: output 1 is -1 where the golden is -1.5"), "{err}");
        assert!(check(&spec("[3.0, -1.02]"), false, sum_and_difference).is_err());
        check(&spec("[3.0, -1.008]"), true, sum_and_difference).expect("fp16 gets a wider tolerance");
        let err = check(&spec("[3.0]"), false, sum_and_difference).unwrap_err();
        assert!(err.to_string().contains("has 2 values, the golden 1"), "{err}");
        let mut two = spec("[3.0, -1.0]");
        two.self_test[0].rows.push(vec![2.0, 2.0]);
        two.self_test[0].expected.push(vec![4.0, 0.5]);
        let err = check(&two, false, sum_and_difference).unwrap_err();
        assert!(err.to_string().contains("self_test[0] input 1: output 1 is 0"), "each row alone: {err}");
    }
}
