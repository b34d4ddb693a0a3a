// Loads semcache.proto with @grpc/proto-loader, as a Node.js gRPC client would, and
// prints the service's methods as JSON (run by tests/test_proto_compile.py).
// Usage: node load_proto.mjs PROTO_ROOT GOOGLE_PROTOS_ROOT
import protoLoader from "@grpc/proto-loader";

const [protoRoot, googleRoot] = process.argv.slice(2);
const definition = protoLoader.loadSync("semcache/v1/semcache.proto", {
  includeDirs: [protoRoot, googleRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const service = definition["semcache.v1.SemanticCacheService"];
const methods = Object.fromEntries(
  Object.entries(service).map(([name, m]) => [
    name,
    { requestStream: m.requestStream, responseStream: m.responseStream, path: m.path },
  ]),
);
console.log(JSON.stringify(methods));
