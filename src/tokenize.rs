//! Text -> model inputs: a HuggingFace `tokenizer.json` turned into padded `input_ids`,
//! `attention_mask` (and `token_type_ids` when the model takes them).
//!
//! A [`TextEncoder`] belongs to one worker thread, like the model it feeds: tokenisation never
//! runs on a tokio thread. Texts are truncated to the request's max length (special tokens
//! included) and padded to the longest text of the batch, not to the max length.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::Cause;
use crate::model::{DType, HostTensor, InputSpec};

/// What the client learns about each text's tokenisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextInfo {
    /// Tokens the model saw, special tokens included.
    pub tokens: usize,
    /// Whether the text was cut to the max length.
    pub truncated: bool,
}

/// A tokenizer owned by a worker thread.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl TextEncoder {
    /// Loads `tokenizer.json`. Padding in the file is switched off: batches pad themselves.
    pub fn load(path: &Path) -> Result<Self, Cause> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| Cause::Tokenizer(format!("loading {}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        let mut enc = TextEncoder { tokenizer, max_length: 0 };
        enc.set_max_length(128)?;
        Ok(enc)
    }

    fn set_max_length(&mut self, max_length: usize) -> Result<(), Cause> {
        if self.max_length != max_length {
            let params = TruncationParams { max_length, ..TruncationParams::default() };
            self.tokenizer
                .with_truncation(Some(params))
                .map_err(|e| Cause::Tokenizer(format!("setting truncation: {e}")))?;
            self.max_length = max_length;
        }
        Ok(())
    }

    /// Tokenises `texts` (truncated to `max_length` tokens) into the tensors `inputs` names,
    /// padded to the longest text.
    pub fn encode(
        &mut self,
        texts: &[String],
        max_length: usize,
        inputs: &[InputSpec],
    ) -> Result<(Vec<HostTensor>, Vec<TextInfo>), Cause> {
        self.set_max_length(max_length)?;
        let encodings = texts
            .iter()
            .map(|t| self.tokenizer.encode_fast(t.as_str(), true))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Cause::Tokenizer(format!("encoding: {e}")))?;
        let width = encodings.iter().map(tokenizers::Encoding::len).max().unwrap_or(0).max(1);
        let rows = texts.len();
        let infos = encodings
            .iter()
            .map(|e| TextInfo { tokens: e.len(), truncated: !e.get_overflowing().is_empty() })
            .collect();
        let tensors = inputs
            .iter()
            .map(|spec| {
                let pick: fn(&tokenizers::Encoding) -> &[u32] = match spec.name.as_str() {
                    "input_ids" => tokenizers::Encoding::get_ids,
                    "attention_mask" => tokenizers::Encoding::get_attention_mask,
                    "token_type_ids" => tokenizers::Encoding::get_type_ids,
                    other => {
                        return Err(Cause::Tokenizer(format!(
                            "text models take input_ids, attention_mask, token_type_ids; not {other}"
                        )));
                    }
                };
                let mut values = vec![0i64; rows * width];
                for (row, e) in encodings.iter().enumerate() {
                    for (col, v) in pick(e).iter().enumerate() {
                        values[row * width + col] = i64::from(*v);
                    }
                }
                Ok(int_tensor(&spec.name, spec.dtype, rows, width, &values))
            })
            .collect::<Result<Vec<_>, Cause>>()?;
        Ok((tensors, infos))
    }
}

fn int_tensor(name: &str, dtype: DType, rows: usize, width: usize, values: &[i64]) -> HostTensor {
    let data = match dtype {
        DType::I32 => values.iter().flat_map(|v| i32::try_from(*v).unwrap_or(i32::MAX).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    HostTensor {
        name: name.to_owned(),
        dtype: if dtype == DType::I32 { DType::I32 } else { DType::I64 },
        shape: vec![rows as i64, width as i64],
        data,
    }
}
