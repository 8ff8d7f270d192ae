// Regenerates config/default.yaml and the README configuration table from the config schema.
import { readFileSync, writeFileSync } from 'node:fs';
import { renderDefaultYaml, withConfigTable } from '../src/config/docs.js';
import { formatMarkdown } from './format-markdown.js';

writeFileSync('config/default.yaml', renderDefaultYaml());
writeFileSync('README.md', await formatMarkdown(withConfigTable(readFileSync('README.md', 'utf8'))));
console.log('config/default.yaml and the README table regenerated');
