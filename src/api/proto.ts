import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType as AgentProto } from './generated/agent.ts';
import type { ProtoGrpcType as ClusterProto } from './generated/cluster.ts';
import type { ProtoGrpcType as HealthProto } from './generated/health.ts';

/** proto/ at the repository root, whether running from src/ (tsx) or dist/ (built). */
export const PROTO_DIR = fileURLToPath(new URL('../../proto/', import.meta.url));

/** Must match the generator's options in scripts/gen-proto.mjs, or the generated types lie. */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_DIR],
};

function load<T>(file: string): T {
  return grpc.loadPackageDefinition(protoLoader.loadSync(file, LOADER_OPTIONS)) as unknown as T;
}

/** Every file the agent serves, in one definition: what server reflection describes. */
export const SERVED_PROTO_FILES = ['lxcr/v1/agent.proto', 'lxcr/v1/cluster.proto', 'grpc/health/v1/health.proto'] as const;

export const agentProto = load<AgentProto>('lxcr/v1/agent.proto');
export const clusterProto = load<ClusterProto>('lxcr/v1/cluster.proto');
export const healthProto = load<HealthProto>('grpc/health/v1/health.proto');

/** The fully qualified name health checks use for the agent service. */
export const AGENT_SERVICE_NAME = 'lxcr.v1.AgentService';
/** The public API's service name, for health checks. */
export const CLUSTER_SERVICE_NAME = 'lxcr.v1.ClusterService';
/** The standard health service's name. */
export const HEALTH_SERVICE_NAME = 'grpc.health.v1.Health';
