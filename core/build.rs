//! Generates the wire messages from `proto/dfs/v1/*.proto` with `protox` (pure Rust, no system
//! `protoc`), and, for every unary RPC, the runtime-agnostic glue that both environments use:
//! an `Rpc` impl naming the method's response type and gRPC path, a handler trait per service,
//! and a byte-level dispatcher for transports that carry encoded messages (the simulation).
//! Streaming RPCs (chunk bytes) are handled by hand in `rpc.rs` and the two environments.

use std::fmt::Write as _;

use heck::ToSnakeCase;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from("../proto");
    let files = ["dfs/v1/messages.proto", "dfs/v1/services.proto"];
    for file in files {
        println!("cargo:rerun-if-changed=../proto/{file}");
    }
    let fds = protox::compile(files, [&proto_root])?;
    prost_build::Config::new().bytes(["."]).service_generator(Box::new(CoreServiceGlue)).compile_fds(fds)?;
    Ok(())
}

/// Emits, per service: `impl Rpc for <Request>` for each unary method, a `<Service>Handler`
/// trait and a `<service>_dispatch` function decoding a request by method name.
struct CoreServiceGlue;

/// Services whose every call is weighed against its caller as a user (`dfs_core::auth`): their
/// handler trait has `admit`, called with the caller (`auth::Peer`) before each handler, and
/// their requests must implement `auth::Guard`. The others (Raft, chunk batches) are the
/// cluster's own traffic, checked by certificate role before decoding.
const GUARDED: &[&str] = &["MetadataService"];

impl prost_build::ServiceGenerator for CoreServiceGlue {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        let unary: Vec<_> = service.methods.iter().filter(|m| !m.client_streaming && !m.server_streaming).collect();
        if unary.is_empty() {
            return;
        }
        let full_name = format!("{}.{}", service.package, service.proto_name);
        let handler = format!("{}Handler", service.name);

        for m in &unary {
            writeln!(
                buf,
                "impl crate::rpc::Rpc for {input} {{\n    type Response = {output};\n    const PATH: &'static str = \"/{full_name}/{method}\";\n}}",
                input = m.input_type,
                output = m.output_type,
                method = m.proto_name,
            )
            .unwrap();
        }

        let guarded = GUARDED.contains(&service.name.as_str());
        writeln!(buf, "/// Server side of the unary methods of `{full_name}`.").unwrap();
        writeln!(buf, "pub trait {handler}: Send + Sync + 'static {{").unwrap();
        if guarded {
            writeln!(
                buf,
                "    /// Whether `peer` may make `request`: called before each handler.\n    fn admit<R: crate::rpc::Rpc + crate::auth::Guard + Sync>(&self, peer: &crate::auth::Peer, request: &R) -> impl ::core::future::Future<Output = ::core::result::Result<(), crate::rpc::RpcError>> + Send;"
            )
            .unwrap();
        }
        for m in &unary {
            writeln!(
                buf,
                "    fn {name}(&self, request: {input}) -> impl ::core::future::Future<Output = ::core::result::Result<{output}, crate::rpc::RpcError>> + Send;",
                name = m.name,
                input = m.input_type,
                output = m.output_type,
            )
            .unwrap();
        }
        writeln!(buf, "}}").unwrap();

        let dispatch = format!("{}_dispatch", service.name.to_snake_case());
        writeln!(
            buf,
            "/// Decodes `body` as the request of `method` (e.g. `CreateFile`), calls the handler and\n\
             /// encodes its reply. `None` when `method` is not a unary method of `{full_name}`."
        )
        .unwrap();
        let peer_param = if guarded { "peer: &crate::auth::Peer, " } else { "" };
        writeln!(
            buf,
            "pub async fn {dispatch}<H: {handler}>(handler: &H, {peer_param}method: &str, body: ::bytes::Bytes) -> ::core::option::Option<::core::result::Result<::bytes::Bytes, crate::rpc::RpcError>> {{"
        )
        .unwrap();
        writeln!(buf, "    match method {{").unwrap();
        for m in &unary {
            let call = if guarded {
                format!("|r| async move {{ handler.admit(peer, &r).await?; handler.{}(r).await }}", m.name)
            } else {
                format!("|r| handler.{}(r)", m.name)
            };
            writeln!(buf, "        \"{proto}\" => Some(crate::rpc::dispatch_decoded(body, {call}).await),", proto = m.proto_name).unwrap();
        }
        writeln!(buf, "        _ => None,\n    }}\n}}").unwrap();
    }
}
