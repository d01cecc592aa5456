// Validates an AsyncAPI document with the real parser (@asyncapi/parser): prints every
// diagnostic, exits 1 on any error. Run by scripts/validate-asyncapi.
import { Parser, fromFile } from '@asyncapi/parser';

const path = process.argv[2];
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
const severities = ['error', 'warning', 'info', 'hint'];
for (const d of diagnostics) {
  console.log(`${severities[d.severity]} ${d.code} ${d.path.join('.')}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === 0);
if (!document || errors.length > 0) {
  console.error(`${path}: ${errors.length} error(s); regenerate it with \`keyloop schemas schemas\` after fixing keyloop_nats::asyncapi`);
  process.exit(1);
}
console.log(
  `${path}: valid AsyncAPI ${document.version()}: ${document.channels().length} channels, ` +
    `${document.operations().length} operations, ${document.components().messages().length} messages`,
);
