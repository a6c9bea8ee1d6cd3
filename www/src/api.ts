// The server's JSON API as the pages see it. The types are generated from the server's OpenAPI
// document (scripts/build-web: `webfl openapi` → openapi-typescript → gen/api.ts), so a server
// change that a page does not follow fails the type check.

import type { components, paths } from './gen/api.js';

export type Schemas = components['schemas'];

/** The JSON a `GET path` answers with on 200, as the OpenAPI document describes it. */
export type GetJson<P extends keyof paths> = paths[P] extends {
  get: { responses: { 200: { content: { 'application/json': infer Body } } } };
}
  ? Body
  : never;
