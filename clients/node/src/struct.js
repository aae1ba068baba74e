// google.protobuf.Struct <-> plain JSON objects: tool arguments and results travel as Structs,
// which proto-loader exposes in their wire shape ({fields: {k: {stringValue: ...}}}).

/** @param {unknown} value */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "boolean") return { boolValue: value };
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`tool arguments must be finite numbers, got ${value}`);
    return { numberValue: value };
  }
  if (typeof value === "string") return { stringValue: value };
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === "object") return { structValue: toStruct(value) };
  throw new TypeError(`cannot send a ${typeof value} as JSON`);
}

/**
 * A plain object as a google.protobuf.Struct message.
 * @param {Record<string, unknown>} object
 */
export function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object ?? {}).map(([k, v]) => [k, toValue(v)])) };
}

/** @param {any} value */
function fromValue(value) {
  switch (value?.kind) {
    case "boolValue":
    case "numberValue":
    case "stringValue":
      return value[value.kind];
    case "listValue":
      return (value.listValue.values ?? []).map(fromValue);
    case "structValue":
      return fromStruct(value.structValue);
    default:
      return null;
  }
}

/**
 * A google.protobuf.Struct message (as decoded with `oneofs: true`) as a plain object.
 * @param {any} struct
 * @returns {Record<string, unknown>}
 */
export function fromStruct(struct) {
  return Object.fromEntries(Object.entries(struct?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]));
}
