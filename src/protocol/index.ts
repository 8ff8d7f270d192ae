export * from './ids.js';
export * from './close-codes.js';
export * from './frames.js';
export * from './schemas.js';
export * from './delivery.js';
