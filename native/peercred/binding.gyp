# Built by `npm run build` and on install (package.json `build:native`):
# node-gyp rebuild --directory native/peercred -> native/peercred/build/Release/peercred.node.
# Plain C against node_api.h (N-API 8, Node >= 12.22): no npm dependency, ABI-stable across Node versions.
{
  "targets": [
    {
      "target_name": "peercred",
      "sources": ["peercred.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-Wall", "-Wextra"],
      "xcode_settings": { "OTHER_CFLAGS": ["-Wall", "-Wextra"] }
    }
  ]
}
