import type * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { AGENT_SERVICE_NAME, CLUSTER_SERVICE_NAME, HEALTH_SERVICE_NAME, LOADER_OPTIONS, SERVED_PROTO_FILES } from './proto.ts';

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha, grpc-node's own implementation): stock clients such as
 * grpcurl list the agent's services and fetch their descriptors, so they need no copy of proto/. It describes
 * what the agent serves and nothing else; like health, it answers without the bearer token (it holds no data).
 */
export function addReflection(server: Pick<grpc.Server, 'addService'>, withCluster: boolean): void {
  // keepCase: the descriptors must carry the .proto's own field names (forwarded_by); proto-loader's camelCase
  // names are for our JavaScript objects, and a descriptor built with them would show clients fields that do not exist.
  const definition = protoLoader.loadSync([...SERVED_PROTO_FILES], { ...LOADER_OPTIONS, keepCase: true });
  const services = withCluster ? [AGENT_SERVICE_NAME, CLUSTER_SERVICE_NAME, HEALTH_SERVICE_NAME] : [AGENT_SERVICE_NAME, HEALTH_SERVICE_NAME];
  new ReflectionService(definition, { services }).addToServer(server);
}
