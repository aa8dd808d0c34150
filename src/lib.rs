//! The quota.v1 API: generated protobuf types, clients and servers.

/// Generated code of `proto/quota/v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("quota.v1");
    include!(concat!(env!("OUT_DIR"), "/clients/quota.v1.rs"));

    /// The encoded `FileDescriptorSet` of `proto/`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quota_descriptor");
}

/// The servers of the standard services quota serves beside its own:
/// generated with [`codec::RequestCodec`], for tonic-health's and
/// tonic-reflection's messages and services.
#[allow(missing_docs, clippy::all)]
pub mod standard {
    /// `grpc.health.v1`.
    pub mod health {
        include!(concat!(env!("OUT_DIR"), "/standard/grpc.health.v1.rs"));
    }
    /// `grpc.reflection.v1`.
    pub mod reflection_v1 {
        include!(concat!(env!("OUT_DIR"), "/standard/grpc.reflection.v1.rs"));
    }
    /// `grpc.reflection.v1alpha`.
    pub mod reflection_v1alpha {
        include!(concat!(
            env!("OUT_DIR"),
            "/standard/grpc.reflection.v1alpha.rs"
        ));
    }
}

pub mod codec;
pub mod liveness;

/// Trailing metadata of an INVALID_ARGUMENT status that names the request
/// field at fault (`start_date`, `end_date`), as OpenAI's error `param`.
pub const PARAM_METADATA: &str = "quota-param";

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_decodes_and_names_both_services() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET)
            .expect("descriptor set decodes");
        let services: Vec<_> = set
            .file
            .iter()
            .filter(|f| f.package() == "quota.v1")
            .flat_map(|f| f.service.iter().map(|s| s.name().to_owned()))
            .collect();
        assert_eq!(services, ["QuotaService", "TokenAdmin"]);
    }
}
