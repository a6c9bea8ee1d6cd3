//! What SecAgg+ clients and the server say to each other, stage by stage. The server relays these
//! as JSON; byte strings (public keys, sealed shares, revealed shares) travel as base64. Each
//! message names its round, so one from an earlier round is refused rather than mixed in.

use serde::{Deserialize, Serialize};

use super::Stage;

/// Client → server, stage 1: the client's two public keys (share sealing, mask agreement).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdvertiseKeys {
    pub round: u64,
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub sealing_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub mask_key: Vec<u8>,
}

/// One neighbour's advertised public keys, as relayed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NeighbourKey {
    pub client: u32,
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub sealing_key: Vec<u8>,
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub mask_key: Vec<u8>,
}

/// Server → client, stage 2: the keys of the client's neighbours that advertised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NeighbourKeys {
    pub round: u64,
    pub neighbours: Vec<NeighbourKey>,
}

/// One client's shares of its self-mask seed and its mask key, sealed for one neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SealedShares {
    pub from: u32,
    pub to: u32,
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub sealed: Vec<u8>,
}

/// Client → server, stage 2: sealed shares, one per neighbour that advertised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShareKeys {
    pub round: u64,
    pub shares: Vec<SealedShares>,
}

/// Server → client, stage 3: the sealed shares addressed to the client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IncomingShares {
    pub round: u64,
    pub shares: Vec<SealedShares>,
}

/// Client → server, stage 3: the quantized input under self and pairwise masks, mod 2^m.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MaskedInput {
    pub round: u64,
    /// Little-endian u32 words, base64: 4 bytes per coordinate (JSON numbers would take ~11).
    #[serde(with = "base64_words")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub masked: Vec<u32>,
}

/// Server → client, stage 4: which of the client's neighbours (itself included) uploaded a
/// masked input and which dropped after sharing keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnmaskRequest {
    pub round: u64,
    pub survivors: Vec<u32>,
    pub dropped: Vec<u32>,
}

/// A share of `owner`'s secret, revealed to the server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevealedShare {
    pub owner: u32,
    #[serde(with = "base64_bytes")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Byte))]
    pub share: Vec<u8>,
}

/// Client → server, stage 4: self-mask shares of the survivors, mask-key shares of the dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnmaskResponse {
    pub round: u64,
    pub self_mask_shares: Vec<RevealedShare>,
    pub mask_key_shares: Vec<RevealedShare>,
}

/// Everything a client sends, tagged by stage for a single relay endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum ToServer {
    AdvertiseKeys(AdvertiseKeys),
    ShareKeys(ShareKeys),
    MaskedInput(MaskedInput),
    Unmask(UnmaskResponse),
}

/// Everything the server sends a client, tagged by stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum ToClient {
    ShareKeys(NeighbourKeys),
    MaskedInput(IncomingShares),
    Unmask(UnmaskRequest),
}

impl ToServer {
    /// The stage this message belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            ToServer::AdvertiseKeys(_) => Stage::AdvertiseKeys,
            ToServer::ShareKeys(_) => Stage::ShareKeys,
            ToServer::MaskedInput(_) => Stage::MaskedInput,
            ToServer::Unmask(_) => Stage::Unmask,
        }
    }
}

impl ToClient {
    /// The stage this message belongs to.
    pub fn stage(&self) -> Stage {
        match self {
            ToClient::ShareKeys(_) => Stage::ShareKeys,
            ToClient::MaskedInput(_) => Stage::MaskedInput,
            ToClient::Unmask(_) => Stage::Unmask,
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(D::Error::custom)
    }
}

mod base64_words {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(words: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let bytes = STANDARD.decode(String::deserialize(d)?).map_err(D::Error::custom)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom("the masked input is not a whole number of 4-byte words"));
        }
        Ok(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_by_stage_with_base64_bytes() {
        let message =
            ToServer::AdvertiseKeys(AdvertiseKeys { round: 3, sealing_key: vec![0xff; 3], mask_key: vec![1] });
        let json = serde_json::to_value(&message).unwrap();
        let want =
            serde_json::json!({"stage": "advertise_keys", "round": 3, "sealing_key": "////", "mask_key": "AQ=="});
        assert_eq!(json, want);
        assert_eq!(serde_json::from_value::<ToServer>(json).unwrap(), message);
        let bad = serde_json::json!({"stage": "advertise_keys", "round": 3, "sealing_key": "!!", "mask_key": ""});
        assert!(serde_json::from_value::<ToServer>(bad).is_err());
        let masked = ToServer::MaskedInput(MaskedInput { round: 1, masked: vec![1, 0xffff_ffff] });
        let json = serde_json::to_value(&masked).unwrap();
        assert_eq!(json["masked"], "AQAAAP////8=");
        assert_eq!(serde_json::from_value::<ToServer>(json).unwrap(), masked);
        let ragged = serde_json::json!({"stage": "masked_input", "round": 1, "masked": "AQAA"});
        assert!(serde_json::from_value::<ToServer>(ragged).is_err());
    }
}
