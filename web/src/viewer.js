// The 3D viewer: one GLB at a time in an orbitable scene, framed to fit; turned by mouse, touch or keyboard.

import {
  Box3,
  Color,
  DirectionalLight,
  HemisphereLight,
  MathUtils,
  PerspectiveCamera,
  SRGBColorSpace,
  Scene,
  Sphere,
  Spherical,
  Vector3,
  WebGLRenderer,
} from "three";
import { GLTFLoader } from "three/examples/jsm/loaders/GLTFLoader.js";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";

const TURN_STEP = MathUtils.degToRad(15); // one arrow key press
const ZOOM_STEP = 1.2; // one + or - press changes the distance by this factor
// keys that turn and zoom the model; the browser's own use of them (scrolling) is prevented on the viewer
const KEYS = {
  ArrowLeft: (viewer) => viewer.turn(TURN_STEP, 0),
  ArrowRight: (viewer) => viewer.turn(-TURN_STEP, 0),
  ArrowUp: (viewer) => viewer.turn(0, TURN_STEP),
  ArrowDown: (viewer) => viewer.turn(0, -TURN_STEP),
  "+": (viewer) => viewer.zoom(1 / ZOOM_STEP),
  "=": (viewer) => viewer.zoom(1 / ZOOM_STEP),
  "-": (viewer) => viewer.zoom(ZOOM_STEP),
  _: (viewer) => viewer.zoom(ZOOM_STEP),
  Home: (viewer) => viewer.model && viewer.frame(),
};

export class Viewer {
  /** Builds the scene on `container`'s canvas; throws when WebGL is unavailable. */
  constructor(container) {
    this.container = container;
    const canvas = container.querySelector("canvas");
    // preserveDrawingBuffer keeps the last frame readable (screenshots, tests reading pixels)
    this.renderer = new WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    this.renderer.outputColorSpace = SRGBColorSpace;

    this.scene = new Scene();
    this.scene.background = new Color(0xf1f3f6);
    this.scene.add(new HemisphereLight(0xffffff, 0x8d8d99, 2.0));
    const sun = new DirectionalLight(0xffffff, 2.2);
    sun.position.set(3, 5, 4);
    this.scene.add(sun);

    this.camera = new PerspectiveCamera(40, 1, 0.01, 100);
    this.camera.position.set(0, 0, 3);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.addEventListener("change", () => this.render());

    this.loader = new GLTFLoader();
    this.model = null;
    this.wireframe = false;

    container.addEventListener("keydown", (event) => {
      const action = KEYS[event.key];
      if (!action || event.altKey || event.ctrlKey || event.metaKey) return;
      event.preventDefault();
      action(this);
    });

    new ResizeObserver(() => this.resize()).observe(container);
    this.resize();
  }

  /** Orbit the camera about the target: `left` radians around the vertical axis, `up` radians towards the top. */
  turn(left, up) {
    const offset = this.camera.position.clone().sub(this.controls.target);
    const spherical = new Spherical().setFromVector3(offset);
    spherical.theta += left;
    spherical.phi = MathUtils.clamp(spherical.phi - up, 0.01, Math.PI - 0.01);
    offset.setFromSpherical(spherical);
    this.camera.position.copy(this.controls.target).add(offset);
    this.controls.update();
    this.render();
  }

  /** Move the camera `factor` times its distance from the target, within the controls' limits. */
  zoom(factor) {
    const offset = this.camera.position.clone().sub(this.controls.target);
    const { minDistance, maxDistance } = this.controls;
    offset.setLength(MathUtils.clamp(offset.length() * factor, minDistance, maxDistance));
    this.camera.position.copy(this.controls.target).add(offset);
    this.controls.update();
    this.render();
  }

  resize() {
    const { clientWidth: width, clientHeight: height } = this.container;
    if (!width || !height) return;
    this.renderer.setSize(width, height, false);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
    this.render();
  }

  render() {
    this.renderer.render(this.scene, this.camera);
  }

  /** Replaces the shown model with the GLB at `url`. */
  async load(url) {
    const gltf = await this.loader.loadAsync(url);
    if (this.model) {
      this.scene.remove(this.model);
      dispose(this.model);
    }
    this.model = gltf.scene;
    this.scene.add(this.model);
    this.setWireframe(this.wireframe);
    this.frame();
  }

  /** Points the camera at the model from a distance at which its bounding sphere fills the view. */
  frame() {
    const box = new Box3().setFromObject(this.model);
    const sphere = box.getBoundingSphere(new Sphere());
    const radius = sphere.radius || 1;
    const fov = MathUtils.degToRad(this.camera.fov);
    const distance = (radius / Math.sin(fov / 2)) * 1.1;
    const direction = new Vector3(0.35, 0.25, 1).normalize();
    this.camera.position.copy(sphere.center).addScaledVector(direction, distance);
    this.camera.near = distance / 100;
    this.camera.far = distance * 100;
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(sphere.center);
    this.controls.minDistance = radius * 0.2;
    this.controls.maxDistance = distance * 10;
    this.controls.update();
    this.render();
  }

  setWireframe(on) {
    this.wireframe = on;
    this.model?.traverse((node) => {
      if (!node.isMesh) return;
      for (const material of [node.material].flat()) material.wireframe = on;
    });
    this.render();
  }
}

function dispose(object) {
  object.traverse((node) => {
    if (!node.isMesh) return;
    node.geometry.dispose();
    for (const material of [node.material].flat()) {
      for (const value of Object.values(material)) if (value?.isTexture) value.dispose();
      material.dispose();
    }
  });
}
