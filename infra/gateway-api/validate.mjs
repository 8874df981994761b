// Validate HTTPRoutes (a JSON list on stdin) with the Gateway API's validators, generated from its CRDs'
// OpenAPI schemas by @kubernetes-models/gateway-api: one line per object, "ok" or "invalid: why".
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";
import { readFileSync } from "fs";

for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  try {
    new HTTPRoute(obj).validate();
    console.log("ok");
  } catch (e) {
    console.log("invalid: " + String(e.message).replace(/\s+/g, " "));
  }
}
