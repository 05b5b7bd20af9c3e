// Validate one GLB file with the Khronos glTF Validator and print the JSON report to stdout.
// Usage: node tools/gltf-validator/validate.mjs PATH.glb
// Exits 0 whenever a report was produced (read report.issues.numErrors); 2 when the file could not be read or parsed.
import { readFile } from "node:fs/promises";
import path from "node:path";
import validator from "gltf-validator";

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs PATH.glb");
  process.exit(2);
}

try {
  const bytes = new Uint8Array(await readFile(file));
  const report = await validator.validateBytes(bytes, { uri: path.basename(file), maxIssues: 0 });
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
} catch (error) {
  console.error(String(error));
  process.exit(2);
}
