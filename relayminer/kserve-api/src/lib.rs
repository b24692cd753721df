//! The KServe v2 gRPC protocol (Triton's `GRPCInferenceService`): generated messages,
//! client and server, and the tensor helpers TensorRT-LLM's text models use
//! (`text_input` / `max_tokens` / `stream` in, `text_output` out).

#[allow(clippy::all, missing_debug_implementations, unused_qualifications)]
mod generated {
    tonic::include_proto!("inference");
}

pub use generated::grpc_inference_service_client::GrpcInferenceServiceClient;
pub use generated::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
pub use generated::*;

use generated::model_infer_request::InferInputTensor;

/// A `[1, 1]` BYTES input holding one string.
pub fn bytes_input(name: &str, value: &[u8]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "BYTES".into(),
        shape: vec![1, 1],
        contents: Some(InferTensorContents {
            bytes_contents: vec![value.to_vec()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `[1, 1]` INT32 input.
pub fn int32_input(name: &str, value: i32) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![1, 1],
        contents: Some(InferTensorContents {
            int_contents: vec![value],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `[1, 1]` BOOL input.
pub fn bool_input(name: &str, value: bool) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "BOOL".into(),
        shape: vec![1, 1],
        contents: Some(InferTensorContents {
            bool_contents: vec![value],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The first BYTES value of input `name` of a request.
pub fn input_bytes<'a>(req: &'a ModelInferRequest, name: &str) -> Option<&'a [u8]> {
    req.inputs
        .iter()
        .find(|i| i.name == name)?
        .contents
        .as_ref()?
        .bytes_contents
        .first()
        .map(Vec::as_slice)
}

/// The first INT32 (or INT64) value of input `name`.
pub fn input_int(req: &ModelInferRequest, name: &str) -> Option<i64> {
    let c = req
        .inputs
        .iter()
        .find(|i| i.name == name)?
        .contents
        .as_ref()?;
    c.int_contents
        .first()
        .map(|v| *v as i64)
        .or_else(|| c.int64_contents.first().copied())
}

/// The first BOOL value of input `name`.
pub fn input_bool(req: &ModelInferRequest, name: &str) -> Option<bool> {
    req.inputs
        .iter()
        .find(|i| i.name == name)?
        .contents
        .as_ref()?
        .bool_contents
        .first()
        .copied()
}

/// The first BYTES value of output `name` of a response.
pub fn output_bytes<'a>(res: &'a ModelInferResponse, name: &str) -> Option<&'a [u8]> {
    res.outputs
        .iter()
        .find(|o| o.name == name)?
        .contents
        .as_ref()?
        .bytes_contents
        .first()
        .map(Vec::as_slice)
}

/// Whether a streamed response is the last one (Triton's `triton_final_response`).
pub fn is_final(res: &ModelInferResponse) -> bool {
    matches!(
        res.parameters
            .get("triton_final_response")
            .and_then(|p| p.parameter_choice.as_ref()),
        Some(infer_parameter::ParameterChoice::BoolParam(true))
    )
}
