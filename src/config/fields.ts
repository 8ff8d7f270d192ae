import { z } from 'zod';
import { configSchema } from './schema.js';

/** One leaf of the configuration: its path, environment variable, type, default and documentation. */
export interface ConfigField {
  path: string[];
  env: string;
  type: 'string' | 'number' | 'integer' | 'boolean';
  enum?: readonly string[];
  default?: unknown;
  description: string;
}

interface JsonSchemaNode {
  type?: string;
  properties?: Record<string, JsonSchemaNode>;
  default?: unknown;
  description?: string;
  enum?: string[];
}

const snake = (segment: string): string => segment.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase();

export function envName(path: readonly string[]): string {
  return `WARREN_${path.map(snake).join('_')}`;
}

function walk(node: JsonSchemaNode, path: string[], out: ConfigField[]): void {
  if (node.type === 'object' && node.properties) {
    for (const [key, child] of Object.entries(node.properties)) walk(child, [...path, key], out);
    return;
  }
  const type = node.type;
  if (type !== 'string' && type !== 'number' && type !== 'integer' && type !== 'boolean') {
    throw new Error(`config field ${path.join('.')} has unsupported type ${String(type)}`);
  }
  out.push({
    path,
    env: envName(path),
    type,
    ...(node.enum ? { enum: node.enum } : {}),
    ...('default' in node ? { default: node.default } : {}),
    description: node.description ?? '',
  });
}

/** Every configuration leaf, derived from the schema so the env mapping and docs cannot drift from it. */
export const CONFIG_FIELDS: readonly ConfigField[] = (() => {
  const out: ConfigField[] = [];
  walk(z.toJSONSchema(configSchema, { io: 'input' }) as JsonSchemaNode, [], out);
  const seen = new Set<string>();
  for (const field of out) {
    if (seen.has(field.env)) throw new Error(`two config fields map to ${field.env}`);
    seen.add(field.env);
  }
  return out;
})();
