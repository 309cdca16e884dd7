//! containerd's runtime options for a Create: the one thing Safehouse reads from them is CRI's
//! `ConfigPath` (which runtime config applies).

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::error::{Result, ShimError};

/// The `ConfigPath` from containerd's runtime options (CRI's runtimeoptions.v1.Options), if any.
pub fn options_config_path(options: Option<&Any>) -> Result<Option<PathBuf>> {
    let Some(any) = options else { return Ok(None) };
    if any.value.is_empty() {
        return Ok(None);
    }
    if any.type_url.ends_with("runtimeoptions.v1.Options") {
        // message Options { string type_url = 1; string config_path = 2; string config_body = 3; }
        let mut input = containerd_shim_protos::protobuf::CodedInputStream::from_bytes(&any.value);
        while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
            let (field, wire) = (tag >> 3, tag & 7);
            if field == 2 && wire == 2 {
                let path = input
                    .read_string()
                    .map_err(|e| ShimError::InvalidArgument(format!("runtime options: {e}")))?;
                return Ok(Some(PathBuf::from(path)).filter(|p| !p.as_os_str().is_empty()));
            }
            input
                .skip_field(
                    containerd_shim_protos::protobuf::rt::WireType::new(wire).ok_or_else(|| {
                        ShimError::InvalidArgument("runtime options: bad wire type".into())
                    })?,
                )
                .map_err(|e| ShimError::InvalidArgument(format!("runtime options: {e}")))?;
        }
        return Ok(None);
    }
    // runc's Options (what `ctr` sends by default) carry nothing Safehouse uses.
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_path_from_cri_runtime_options() {
        // Options{type_url: "x", config_path: "/etc/safehouse/net.toml"}
        let mut value = vec![0x0a, 1, b'x', 0x12];
        let path = b"/etc/safehouse/net.toml";
        value.push(path.len() as u8);
        value.extend_from_slice(path);
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            options_config_path(Some(&any)).expect("decodes"),
            Some(PathBuf::from("/etc/safehouse/net.toml"))
        );
        assert_eq!(options_config_path(None).expect("none"), None);
        let junk = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 50, b'a'],
            ..Default::default()
        };
        assert!(
            options_config_path(Some(&junk)).is_err(),
            "truncated options must fail"
        );
    }
}
