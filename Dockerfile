# The node image: outpost-node and link-sim in a venv, for compose.yaml. Build it with
# scripts/build-node-image, which makes what this file expects first, because nothing can
# be pulled here and the build needs no network at all:
#   - the base, outpost-base:SUITE, debootstrapped from the Debian mirror and imported
#     (scripts/build-base-image): python3, python3-venv, git, zstd, docker-registry;
#   - a build context holding wheels/ (the project and its dependencies, built on the host
#     by `pip wheel`, hence the same Debian suite as the host: same Python) and template/
#     (the project's example/ and terraform/, which Earth's config repo starts from).
ARG BASE=outpost-base:bookworm
FROM ${BASE}
# Few steps, because each one costs a copy of the whole image on a vfs daemon (as here):
# one COPY of the context (.dockerignore keeps it to wheels/ and template/), one RUN for
# the venv, the template (`init --template` takes it as the config repo's root, since the
# installed package has no example/) and the registry service's config (Debian's own asks
# for htpasswd auth; compose.yaml sets the address, REGISTRY_HTTP_ADDR overriding http.addr).
COPY . /tmp/context/
RUN python3 -m venv /opt/outpost \
 && /opt/outpost/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/context/wheels outpost \
 && mv /tmp/context/template /opt/outpost/template \
 && rm -rf /tmp/context \
 && mkdir -p /etc/outpost \
 && printf '%s\n' 'version: 0.1' 'log:' '  level: info' 'storage:' '  filesystem:' \
        '    rootdirectory: /var/lib/docker-registry' '  delete:' '    enabled: true' \
        'http:' '  addr: 127.0.0.1:5000' > /etc/outpost/registry.yml
ENV PATH=/opt/outpost/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DOCKER_HOST=unix:///var/run/docker.sock
CMD ["outpost-node", "--help"]
