import { format, resolveConfig } from 'prettier';

/** Markdown as `npm run lint` wants it (Prettier pads table columns), so generated docs stay lint-clean. */
export async function formatMarkdown(text: string): Promise<string> {
  const options = (await resolveConfig('README.md')) ?? {};
  return format(text, { ...options, parser: 'markdown' });
}
