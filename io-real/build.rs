//! Generates the tonic gRPC services of `proto/dfs/v1/services.proto` (servers only), against
//! the message types `dfs-core` generated from `messages.proto`; and, for every service whose
//! methods are all unary, an adapter that answers it with `dfs-core`'s handler trait.
//! `protox` compiles the .proto files: no system `protoc` is needed.

use std::fmt::Write as _;

use heck::ToSnakeCase;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["dfs/v1/messages.proto", "dfs/v1/services.proto"];
    for file in files {
        println!("cargo:rerun-if-changed=../proto/{file}");
    }
    let mut fds = protox::compile(files, ["../proto"])?;
    // Only the services are generated here; the messages come from dfs-core.
    fds.file.retain(|f| f.name() == "dfs/v1/services.proto");
    let tonic = tonic_prost_build::configure().build_client(false).build_transport(false).service_generator();
    prost_build::Config::new().extern_path(".dfs.v1", "::dfs_core::proto").service_generator(Box::new(Both(tonic, CoreAdapters))).compile_fds(fds)?;
    Ok(())
}

struct Both(Box<dyn prost_build::ServiceGenerator>, CoreAdapters);

impl prost_build::ServiceGenerator for Both {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        self.1.generate(service.clone(), buf);
        self.0.generate(service, buf);
    }
    fn finalize(&mut self, buf: &mut String) {
        self.0.finalize(buf);
    }
    fn finalize_package(&mut self, package: &str, buf: &mut String) {
        self.0.finalize_package(package, buf);
    }
}

/// `impl <service>_server::<Service> for crate::grpc::Adapter<H: dfs_core::proto::<Service>Handler>`.
struct CoreAdapters;

impl prost_build::ServiceGenerator for CoreAdapters {
    fn generate(&mut self, service: prost_build::Service, buf: &mut String) {
        if service.methods.iter().any(|m| m.client_streaming || m.server_streaming) {
            return; // streaming services are adapted by hand in grpc.rs
        }
        let module = format!("{}_server", service.name.to_snake_case());
        writeln!(buf, "#[::tonic::async_trait]").unwrap();
        writeln!(buf, "impl<H: ::dfs_core::proto::{name}Handler> {module}::{name} for crate::grpc::Adapter<H> {{", name = service.name).unwrap();
        // Must match `GUARDED` in dfs-core's build.rs: these handlers have `admit`.
        let guarded = service.name == "MetadataService";
        for m in &service.methods {
            let body = if guarded {
                format!(
                    "let peer = crate::tls::peer_of(&request);\n        let request = request.into_inner();\n        crate::grpc::respond(async {{ self.0.admit(&peer, &request).await?; self.0.{}(request).await }}.await)",
                    m.name
                )
            } else {
                format!("crate::grpc::respond(self.0.{}(request.into_inner()).await)", m.name)
            };
            writeln!(
                buf,
                "    async fn {name}(&self, request: ::tonic::Request<{input}>) -> ::core::result::Result<::tonic::Response<{output}>, ::tonic::Status> {{\n        {body}\n    }}",
                name = m.name,
                input = m.input_type,
                output = m.output_type,
            )
            .unwrap();
        }
        writeln!(buf, "}}").unwrap();
    }
}
