"""The OSB OpenAPI document as this broker implements it, for ci/schemathesis.

Usage: osb-profile.py OPENAPI_YAML CATALOG_JSON > profile.yaml

The published document (../shared/osb/openapi.yaml) is looser than the written OSB spec and
than docs/api.md: it types ids and catalog references as any string, and it leaves out the
statuses every endpoint can answer (401, 412) or that the written spec gives elsewhere. Checked
against it as it is, every request the broker rightly refuses (an id it cannot use as an etcd
key, a plan that is not in its catalog) reads as "valid data rejected". This script adds exactly
what docs/api.md documents, each addition below with the rule it comes from, and nothing that
loosens the document: a response the broker sends that is still not described here is a finding.

Runs with the schemathesis virtualenv's Python (PyYAML comes with schemathesis).
"""

import copy
import json
import sys

import yaml

# docs/api.md "Ids": 1 to 64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit.
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

ERROR = {"$ref": "#/components/schemas/Error"}


def error_response(description):
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def main(openapi_path, catalog_path):
    with open(openapi_path) as f:
        doc = yaml.safe_load(f)
    with open(catalog_path) as f:
        catalog = json.load(f)
    service_ids = [s["id"] for s in catalog["services"]]
    plan_ids = [p["id"] for s in catalog["services"] for p in s["plans"]]

    schemas = doc["components"]["schemas"]
    # docs/api.md "Error body": every error has a description (the written spec: SHOULD).
    schemas["Error"]["required"] = ["description"]
    # docs/api.md "Bodies": service_id and plan_id must name the catalog's service and plans
    # (400 otherwise); the dev stack's catalog has one service with one plan, so every
    # combination the generator picks from these lists is a valid one.
    ids = {"service_id": {"type": "string", "enum": service_ids},
           "plan_id": {"type": "string", "enum": plan_ids}}
    for name in ["ServiceInstanceProvisionRequestBody", "ServiceInstanceUpdateRequestBody",
                 "ServiceBindingRequest"]:
        props = schemas[name]["properties"]
        for key, schema in ids.items():
            if key in props:
                props[key] = copy.deepcopy(schema)
        # docs/api.md: no plan takes parameters yet, a non-empty object gets 400.
        props["parameters"] = {"type": "object", "maxProperties": 0}
    # docs/api.md "Bodies": null in an optional field is the same as leaving it out (as in the
    # platforms' own broker libraries; the written spec does not say).
    for name in ["ServiceInstanceProvisionRequestBody", "ServiceInstanceUpdateRequestBody",
                 "ServiceBindingRequest"]:
        schema = schemas[name]
        for key, prop in schema["properties"].items():
            if key not in schema.get("required", []):
                if "$ref" in prop:  # inlined: OpenAPI 3.0 ignores a sibling of $ref
                    prop = copy.deepcopy(schemas[prop["$ref"].rsplit("/", 1)[1]])
                if key == "bind_resource":  # its own fields likewise
                    prop["properties"] = {k: {**v, "nullable": True} for k, v in prop["properties"].items()}
                if "enum" in prop:  # an enum lists null itself (OpenAPI 3.0.3)
                    prop = {**prop, "enum": [*prop["enum"], None]}
                schema["properties"][key] = {**prop, "nullable": True}
    # Fields the broker does not read, and so does not check (docs/api.md: unknown fields are
    # ignored): an update's previous_values (the broker has the record), and a bind's
    # predecessor_binding_id (binding rotation; no plan of the catalog says binding_rotatable, so
    # a platform does not send it).
    del schemas["ServiceInstanceUpdateRequestBody"]["properties"]["previous_values"]
    del schemas["ServiceBindingRequest"]["properties"]["predecessor_binding_id"]
    # docs/api.md "PUT (provision)": each of the four fields is a non-empty string.
    for key in ["organization_guid", "space_guid"]:
        schemas["ServiceInstanceProvisionRequestBody"]["properties"][key]["minLength"] = 1

    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            responses = op["responses"]
            # docs/api.md "Protocol rules", from the written spec's authentication and version
            # sections: wrong credentials get 401, a missing or old version header 412.
            responses.setdefault("401", error_response("Unauthorized"))
            responses.setdefault("412", error_response("Precondition Failed"))
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param["name"] in ("instance_id", "binding_id"):
                    param["schema"] = {"type": "string", "pattern": ID_PATTERN}
                    # An id outside the rule gets 400 on every endpoint (docs/api.md "Ids").
                    responses.setdefault("400", error_response("Bad Request"))
                if param.get("in") == "query" and param["name"] in ids and method == "delete":
                    # docs/api.md: DELETE's service_id and plan_id must be in the catalog.
                    param["schema"] = copy.deepcopy(ids[param["name"]])
            if "requestBody" in op:
                # docs/api.md "Bodies": larger than 64 KiB gets 413.
                responses.setdefault("413", error_response("Payload Too Large"))
            if method == "patch" or (method == "put" and path.endswith("{binding_id}")):
                # docs/api.md: update and bind of an instance that does not exist get 404 (the
                # written spec gives no status for it; the document lists none).
                responses.setdefault("404", error_response("Not Found"))

    yaml.safe_dump(doc, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: osb-profile.py OPENAPI_YAML CATALOG_JSON")
    main(sys.argv[1], sys.argv[2])
