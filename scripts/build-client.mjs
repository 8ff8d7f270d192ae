// Placeholder until the browser client lands: the build step exists so `npm run build` is stable.
